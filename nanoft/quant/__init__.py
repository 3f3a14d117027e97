"""LoRA and quantization: adapters, NF4 and int8 weights, quantized loading and quantization-aware training."""
