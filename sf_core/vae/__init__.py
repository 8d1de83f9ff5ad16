"""Latents → pixels and back: the Wan2.1 VAE (`wan`), the TAEHV tiny decoder (`taehv`), and the one
streaming-decoder interface both offer (`decoders`)."""
