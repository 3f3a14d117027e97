"""The models, each one file that reads top to bottom: GPT-2, BERT, the LSTM baseline, task heads, the attention
kernel and the decoding loop they share."""
