"""nanoft: fine-tuning large language models in small, readable PyTorch.

The public names, one import away. Each lives in a file of its own that reads top to bottom:
models in gpt2.py, bert.py and lstm.py, each with its from_pretrained/save_pretrained (Hugging Face folders are
read and written by hf_files.py, with weights.py and hub.py below it); task heads in heads.py; the training
loop in train.py. The recipes, one file per kind of task, are imported from their modules:
nanoft.classification, nanoft.extractive_qa, nanoft.mlm (continued pre-training), nanoft.mixing (multi-task) and
nanoft.causal_lm; LoRA and quantization from nanoft.lora, nanoft.nf4, nanoft.int8, nanoft.qat and nanoft.quantize.
"""
from nanoft.gpt2 import GPT2, GPT2Config
from nanoft.bert import BERT, BertConfig, BertForMaskedLM, BertMLMHead
from nanoft.lstm import LSTMLM, LSTMConfig
from nanoft.heads import ClassificationHead, MultiTaskModel, SpanHead, classification_loss, freeze_encoder, span_loss
from nanoft.tokenizer import Tokenizer, add_special_tokens, load_bert_tokenizer, load_gpt2_tokenizer
from nanoft.run_files import load_checkpoint, plot_log
from nanoft.train import TrainConfig, TrainResult, seed_everything, train

__all__ = [
    "GPT2", "GPT2Config", "BERT", "BertConfig", "BertForMaskedLM", "BertMLMHead", "LSTMLM", "LSTMConfig",
    "ClassificationHead", "SpanHead", "MultiTaskModel", "classification_loss", "span_loss", "freeze_encoder",
    "Tokenizer", "load_gpt2_tokenizer", "load_bert_tokenizer", "add_special_tokens",
    "TrainConfig", "TrainResult", "train", "seed_everything", "load_checkpoint", "plot_log",
]
