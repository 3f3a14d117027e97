"""
Task heads on top of the BERT encoder, and one model that shares the encoder between tasks.

ClassificationHead (sentence -> label, e.g. SST-2) and SpanHead (token -> answer start/end, e.g. SQuAD)
are the layers Hugging Face's BertForSequenceClassification / BertForQuestionAnswering put on BERT, with the
same names (`classifier`, `qa_outputs`), so their weights copy over 1:1 and the logits match. Each head owns its
loss (`head.loss(logits, batch)`), so the multi-task model only routes: a new kind of head needs no change here.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ClassificationHead(nn.Module):

    def __init__(self, hidden_size, num_labels, dropout=0.1, pooling="cls"):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"unknown pooling {pooling!r}: use 'cls' (BERT's pooler on [CLS]) or 'mean' (masked mean of tokens)")
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)  # BERT's init, as HF gives a fresh classifier
        nn.init.zeros_(self.classifier.bias)

    def forward(self, hidden, attention_mask=None, pooled=None):
        return self.classifier(self.dropout(self.sentence_vector(hidden, attention_mask, pooled)))  # (B, num_labels)

    def sentence_vector(self, hidden, attention_mask=None, pooled=None):
        """What the classifier reads for each sentence, (B, H): the [CLS] pooler output or the masked mean."""
        if self.pooling == "cls":
            # BERT's pooler (tanh dense on [CLS]) lives in the encoder, because it was pretrained with it
            if pooled is None:
                raise ValueError("pooling='cls' needs the encoder's pooler output: pass pooled=encoder.pool(hidden)")
            return pooled
        # every real token votes equally (the sentence-transformers recipe); pads must not, so mask them out
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, H)

    def loss(self, logits, batch):
        """Cross-entropy against batch["labels"], or None for a batch without labels (prediction)."""
        return classification_loss(logits, batch["labels"]) if "labels" in batch else None


class SpanHead(nn.Module):

    def __init__(self, hidden_size):
        super().__init__()
        self.qa_outputs = nn.Linear(hidden_size, 2)  # one score per token for "answer starts here", one for "ends here"
        nn.init.normal_(self.qa_outputs.weight, std=0.02)
        nn.init.zeros_(self.qa_outputs.bias)

    def forward(self, hidden, attention_mask=None, pooled=None):
        # like HF, pads and question tokens are NOT masked here: SQuAD post-processing keeps answers inside the context
        start, end = self.qa_outputs(hidden).unbind(dim=-1)  # (B, T, 2) -> 2 x (B, T)
        return start.contiguous(), end.contiguous()

    def loss(self, logits, batch):
        """The mean of the start and end cross-entropies, or None for a batch without answer positions."""
        if "start_positions" not in batch:
            return None
        return span_loss(*logits, batch["start_positions"], batch["end_positions"])


def classification_loss(logits, labels):
    return F.cross_entropy(logits, labels)


def span_loss(start_logits, end_logits, start_positions, end_positions):
    # HF's rule: a position >= T (outside the model's input) is clamped to T and ignored. nanoft.data.squad never makes
    # one: a window that does not hold the whole answer is labelled (0, 0), [CLS], and trains like any other
    T = start_logits.size(1)
    start_positions = start_positions.view(-1).clamp(0, T)
    end_positions = end_positions.view(-1).clamp(0, T)
    start_loss = F.cross_entropy(start_logits, start_positions, ignore_index=T)
    end_loss = F.cross_entropy(end_logits, end_positions, ignore_index=T)
    return (start_loss + end_loss) / 2


class MultiTaskModel(nn.Module):
    """One shared encoder, one head per task: forward(task, batch) -> dict(loss=..., logits=...).

    A single-task model is the same with one head (minbert's shape: one encoder, one head per task). A head is any
    module with forward(hidden, attention_mask=, pooled=) and loss(logits, batch)."""

    def __init__(self, encoder, heads):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(heads)
        for name, head in self.heads.items():
            if not callable(getattr(head, "loss", None)):
                raise ValueError(f"head {name!r} ({type(head).__name__}) has no loss(logits, batch) method: "
                                 "give it one, as ClassificationHead and SpanHead have")

    def task_name(self, task=None):
        """task, or when None the name of this model's only head (a library default never names a data set)."""
        if task is not None:
            return task
        if len(self.heads) != 1:
            raise ValueError(f"this model has heads for {sorted(self.heads)}: pass task= one of them")
        return next(iter(self.heads))

    def forward(self, task, batch):
        if task not in self.heads:
            raise ValueError(f"unknown task {task!r}: this model has heads for {sorted(self.heads)}")
        head = self.heads[task]
        mask = batch.get("attention_mask")
        hidden = self.encoder(batch["input_ids"], attention_mask=mask, token_type_ids=batch.get("token_type_ids"))
        needs_pooler = getattr(head, "pooling", None) == "cls"
        pooled = self.encoder.pool(hidden) if needs_pooler else None  # only pay for the pooler when it is used
        logits = head(hidden, attention_mask=mask, pooled=pooled)
        return dict(loss=head.loss(logits, batch), logits=logits)  # span logits are (start (B, T), end (B, T))

