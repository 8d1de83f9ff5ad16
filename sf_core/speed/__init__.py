"""Optional speed paths, each checked against the plain one: `torch.compile` and CUDA-graph replay
(`graphs`), fp8 weights (`fp8`), decode overlapped with the next chunk's denoising (`overlap`)."""
