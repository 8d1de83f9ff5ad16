"""Prompts → context: the umT5 network (`umt5`), its SentencePiece tokenizer (`tokenizer`), and the
encoder that loads either file layout and encodes prompts (`encoder`)."""
