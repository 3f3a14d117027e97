"""Files in and out: atomic writes, safetensors and .bin weights, the Hugging Face hub, Hugging Face folders,
tokenizers, and the checkpoints that install offline."""
