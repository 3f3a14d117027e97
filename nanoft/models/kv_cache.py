"""The key/value cache of a decoder: what generation keeps between steps so that each new token costs one position.

Without it, generating token t runs the whole prefix 0..t-1 through every layer again. With it, each layer keeps
the keys and values of the positions it has seen, and a step computes only the new position's query, key and value,
then attends over the cached keys and values plus its own.

One cache per call of `generate`; the model fills it in place:

    cache = KVCache()
    logits, _ = model(prompt_ids, kv_cache=cache)      # (B, T, V); cache.length == T
    logits, _ = model(next_ids, kv_cache=cache)        # (B, 1, V); cache.length == T + 1

So `forward` keeps one return contract, `(logits, loss)`, and the cache is an explicit extra argument that only
generation passes.
"""
import torch


class KVCache:
    def __init__(self):
        self.keys = []    # per layer: (B, n_kv_head, T_cached, head_dim)
        self.values = []
        self.state = None  # a recurrent model keeps its whole past here instead: the LSTM's (h, c)

    @property
    def length(self):
        """How many positions are cached (0 before the first forward)."""
        return self.keys[0].size(2) if self.keys else 0

    def update(self, layer, k, v):
        """Append this step's keys and values (B, n_kv_head, T_new, head_dim) for one layer; return all of them,
        cached and new, for attention."""
        if layer == len(self.keys):  # the first step: this layer has nothing cached yet
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        return self.keys[layer], self.values[layer]

    def reorder(self, rows):
        """Keep the batch rows `rows` (a (B',) index tensor), in that order: beam search follows its surviving
        beams this way."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        if self.state is not None:  # the LSTM's (h, c), each (n_layers, B, hidden_dim)
            self.state = tuple(s.index_select(1, rows) for s in self.state)
