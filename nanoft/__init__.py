"""nanoft: fine-tuning large language models in small, readable PyTorch.

The package is in floors, each a folder, and each file imports only from the floors below it:

    nanoft/io/        files, safetensors and .bin weights, the hub, Hugging Face folders, tokenizers, assets
    nanoft/models/    GPT-2, BERT, Llama, the LSTM baseline, task heads, attention, decoding
    nanoft/training/  the training loop, the optimizer and schedule, device and precision, batching, run files, FSDP2
    nanoft/quant/     LoRA, NF4, int8, quantized loading, quantization-aware training
    nanoft/data/      the data sets (where each comes from, the readers) and the metrics
    nanoft/recipes/   one file per kind of task: what you call to fine-tune your own model on your own data
    nanoft/cli/       the chapter scripts' flags and reports (the library never imports it)

Every public name is importable from here, so that code outside nanoft does not depend on the folders:
`from nanoft import GPT2, add_lora, fine_tune_classifier, minilm_dir`.
"""
from nanoft.io.assets import minilm_dir, smollm2_gguf
from nanoft.io.chat import render_chat
from nanoft.io.gguf import GGUFFile, read_gguf_checkpoint
from nanoft.io.tokenizer import (Tokenizer, add_special_tokens, load_bert_tokenizer, load_gpt2_tokenizer,
                                 load_tokenizer)
from nanoft.models.bert import BERT, BertConfig, BertForMaskedLM, BertMLMHead
from nanoft.models.gpt2 import GPT2, GPT2Config
from nanoft.models.llama import Llama, LlamaConfig
from nanoft.models.heads import ClassificationHead, MultiTaskModel, SpanHead, classification_loss, span_loss
from nanoft.models.lstm import LSTMLM, LSTMConfig
from nanoft.training.freeze import freeze_encoder, train_last_blocks, train_only
from nanoft.training.fsdp import load_sharded_weights
from nanoft.training.run_files import load_checkpoint, plot_log
from nanoft.training.train import TrainConfig, TrainResult, seed_everything, train
from nanoft.quant.lora import (add_lora, load_adapter, lora_disabled, merge_and_unload, merge_lora, save_adapter,
                               trainable_parameters, unmerge_lora)
from nanoft.quant.qat import convert_qat, prepare_qat
from nanoft.quant.quantize import load_quantized, model_nbytes, quantize_model
from nanoft.data.datasets import dataset_path, read_sst2, read_text
from nanoft.data.metrics import accuracy, perplexity
from nanoft.data.squad import squad_evaluate
from nanoft.data.instructions import chat_messages, load_instructions, load_preferences, prompt_messages
from nanoft.data.generation_metrics import distinct_n, mean_rouge_l, rouge_l, seq_rep_n
from nanoft.recipes.classification import (evaluate_accuracy, fine_tune_classifier, fine_tune_frozen, load_sst2,
                                           sentence_classifier)
from nanoft.recipes.extractive_qa import evaluate_qa, fine_tune_qa, load_squad, span_model
from nanoft.recipes.mlm import continue_pretraining
from nanoft.recipes.mixing import fine_tune_multitask
from nanoft.recipes.causal_lm import evaluate_perplexity, fine_tune_lm
from nanoft.recipes.small_gpt2 import PretrainConfig, load_pretrained_gpt2, pretrain_small_gpt2
from nanoft.recipes.instruction_tuning import (fine_tune_sft, generate_responses, prepare_for_tuning,
                                               response_perplexity, sft_features, tokens_per_second)
from nanoft.recipes.dpo import (dpo_loss, evaluate_preferences, fine_tune_dpo, pair_logps, preference_features,
                                preference_metrics, with_reference_logps)
from nanoft.recipes.unlikelihood import fine_tune_unlikelihood

__all__ = [
    "minilm_dir", "Tokenizer", "add_special_tokens", "load_bert_tokenizer", "load_gpt2_tokenizer",
    "smollm2_gguf", "load_tokenizer", "render_chat", "GGUFFile", "read_gguf_checkpoint",
    "BERT", "BertConfig", "BertForMaskedLM", "BertMLMHead", "GPT2", "GPT2Config", "Llama", "LlamaConfig",
    "LSTMLM", "LSTMConfig",
    "ClassificationHead", "SpanHead", "MultiTaskModel", "classification_loss", "span_loss", "freeze_encoder",
    "TrainConfig", "TrainResult", "train", "seed_everything", "load_checkpoint", "plot_log", "train_only",
    "train_last_blocks", "load_sharded_weights",
    "add_lora", "save_adapter", "load_adapter", "merge_lora", "unmerge_lora", "merge_and_unload",
    "trainable_parameters", "prepare_qat", "convert_qat", "load_quantized", "model_nbytes", "quantize_model",
    "dataset_path", "read_sst2", "read_text", "accuracy", "perplexity", "squad_evaluate",
    "sentence_classifier", "load_sst2", "fine_tune_classifier", "fine_tune_frozen", "evaluate_accuracy",
    "span_model", "load_squad", "fine_tune_qa", "evaluate_qa", "continue_pretraining", "fine_tune_multitask",
    "fine_tune_lm", "evaluate_perplexity", "PretrainConfig", "load_pretrained_gpt2", "pretrain_small_gpt2",
    "lora_disabled", "chat_messages", "load_instructions", "load_preferences", "prompt_messages",
    "distinct_n", "mean_rouge_l", "rouge_l", "seq_rep_n",
    "fine_tune_sft", "generate_responses", "prepare_for_tuning", "response_perplexity", "sft_features",
    "tokens_per_second",
    "dpo_loss", "evaluate_preferences", "fine_tune_dpo", "pair_logps", "preference_features", "preference_metrics",
    "with_reference_logps",
    "fine_tune_unlikelihood",
]
