"""FSDP2: shard the weights, gradients and AdamW state across processes instead of copying them onto each one.

DDP keeps a whole copy of the model, its gradients and both AdamW moments on every process: 16 bytes per
parameter in fp32, whatever the number of processes. FSDP2 (`torch.distributed.fsdp.fully_shard`) keeps 1/N of
each on each of N processes, and gathers a block's full weights only while that block runs:

    forward of block i:  all-gather its weights -> compute -> free the gathered copy
    backward of block i: all-gather again -> gradients -> reduce-scatter them (each process keeps its 1/N, averaged)
    optimizer step:      AdamW updates the local 1/N of each weight with the local 1/N of its moments

So a process holds (parameters + gradients + AdamW state) / N, plus one block's full weights at a time, plus the
activations. The parameters become DTensors (a local shard plus where the other shards live); the optimizer,
gradient clipping and torch.distributed.checkpoint all understand them.

What train() uses, with TrainConfig(parallel="fsdp") under `torchrun --nproc_per_node=N`:
    shard_model          fully_shard each transformer block, then the whole model (the embedding, final norm and
                         head, and a tied head, belong to the root group)
    gradient_sync        no reduce-scatter until the last micro-batch of an accumulated step
    grad_norm            the total gradient norm over every shard, as a plain number
    save_sharded / load_sharded    the checkpoint: a folder that each process writes its shards into (DCP),
                         written as folder.tmp then renamed, so a kill mid-write leaves the previous one whole
    full_state_dict / load_full_state_dict    whole weights, for best.pt and for exporting

After a run: load_sharded_weights(plain_model, "out/checkpoint") in one process, then model.save_pretrained(...)
(after merge_and_unload for LoRA) or nanoft.save_adapter(model, ...) for a PEFT adapter folder.

LoRA and QLoRA: only the adapters have gradients, so only they are reduce-scattered and only they have AdamW
state; frozen weights are sharded like the others (FSDP2 allows frozen and trained parameters in one group). A
QLoRA base (NF4Linear) keeps its 4-bit codes and scales in buffers, and FSDP2 shards parameters, not buffers: the
NF4 base stays whole on every process. That costs 0.52 bytes per base weight on each GPU (about 0.5 GB for a 1B
model, less than its activations) and no communication: the frozen base is never gathered. Sharding it is not a
matter of turning the buffers into frozen parameters: uint8 codes beside fp32 weights in one FSDP2 group ran
without an error but trained to other losses than one process does (torch 2.13); it needs a tensor subclass with
FSDP2's all-gather hooks (torchao's NF4Tensor has them), worth it only for bases far larger than a GPU.
"""
import os
import shutil
import warnings
from contextlib import contextmanager
from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

TRAIN_STATE = "train_state.pt"  # beside the shards: step, schedule, data position, RNG states (written by rank 0)


def transformer_blocks(model: nn.Module) -> list:
    """The blocks to shard one by one: the items of the nn.ModuleList that each nanoft model names in its class's
    BLOCKS (GPT2's transformer.h, Llama's model.layers), also inside a bigger model (a task head around a BERT)."""
    return [block for m in model.modules() if getattr(type(m), "BLOCKS", None)
            for block in m.get_submodule(type(m).BLOCKS)]


def shard_model(model: nn.Module, device: torch.device, precision: str = "fp32",
                reshard_after_forward: bool = True) -> nn.Module:
    """fully_shard each transformer block, then the root (what is left: embeddings, final norm, head), in place.
    precision (resolved: "fp32" | "bf16"): with bf16 the gathered weights and the computation are bf16, while the
    sharded weights, the gradients' reduce-scatter and AdamW stay fp32 (MixedPrecisionPolicy).
    reshard_after_forward=False keeps each block's gathered weights from forward to backward: one all-gather
    fewer per block, the memory of DDP for the weights. Call it before building the optimizer: the parameters
    become new (DTensor) objects."""
    if precision == "fp16":
        raise ValueError("parallel='fsdp' trains in fp32 or bf16 (fp16 would need a sharded loss scaler): use "
                         "precision='bf16' (or 'fp32'), or parallel='ddp'")
    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(f"parallel='fsdp' found no transformer blocks in {type(model).__name__}: name its "
                         "nn.ModuleList of blocks in the class (BLOCKS = 'layers', as nanoft's models do), or use "
                         "parallel='ddp'")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))  # one dimension: every process holds 1/N
    bf16 = precision == "bf16"
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                              reduce_dtype=torch.float32 if bf16 else None)
    # the weights may still be on the CPU: fully_shard moves each shard to the mesh's device, so no process
    # ever holds the whole model on its GPU
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    model.to(device)  # buffers (a QLoRA base's NF4 codes, RoPE tables) are not sharded: they follow here
    return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


@contextmanager
def gradient_sync(model: nn.Module, sync: bool):
    """With sync=False, backward only accumulates gradients locally: DDP's no_sync, FSDP2's
    set_requires_gradient_sync(False). Accumulated micro-batches skip the communication until the last one,
    which syncs the sum. Under FSDP2 the skipped syncs keep unsharded gradients meanwhile: one full copy of the
    trained parameters' gradients, what DDP holds all the time."""
    if sync:
        yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2 (also through a torch.compile wrapper)
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        with model.no_sync():
            yield


def grad_norm(norm) -> torch.Tensor:
    """clip_grad_norm_'s result as a plain tensor (over DTensor gradients it is a DTensor: the norm over all shards)."""
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


# ----------------------------------------------------------------------------- checkpoints


def sharded_folder(out_dir: str) -> Optional[str]:
    """The sharded checkpoint of out_dir to resume from, or None. A kill between the two renames of save_sharded
    leaves only checkpoint.old: that one is whole, so it is the one to use."""
    for name in ("checkpoint", "checkpoint.old"):
        path = os.path.join(out_dir, name)
        if os.path.exists(os.path.join(path, TRAIN_STATE)):
            return path
    return None


def save_sharded(out_dir: str, model: nn.Module, optimizer, train_state: dict) -> str:
    """Every process calls it. Each writes its shards of the weights and AdamW moments into out_dir/checkpoint.tmp
    (torch.distributed.checkpoint, DCP), rank 0 adds train_state (a dict of plain values and tensors), then rank 0
    renames: checkpoint -> checkpoint.old, checkpoint.tmp -> checkpoint, and deletes checkpoint.old. A kill at any
    point leaves a whole checkpoint or checkpoint.old (sharded_folder finds it)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    final, tmp, old = (os.path.join(out_dir, n) for n in ("checkpoint", "checkpoint.tmp", "checkpoint.old"))
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # what a killed save left
        os.makedirs(tmp)
    _barrier()  # nobody writes into checkpoint.tmp before rank 0 has emptied it
    model_sd, optim_sd = get_state_dict(model, optimizer)  # DTensor shards, named as the plain model names them
    # returns once rank 0 wrote the index; one process without torchrun (parallel="fsdp" on 1) writes it all
    with _one_process_is_fine():
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp, no_dist=not dist.is_initialized())
    if rank == 0:
        torch.save(train_state, os.path.join(tmp, TRAIN_STATE))  # last: its presence marks a whole checkpoint
        if os.path.exists(final):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)  # a folder cannot be renamed over a non-empty one: move the old one aside first
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()  # no process reads or rewrites the checkpoint before it is in place
    return final


def load_sharded(folder: str, model: nn.Module, optimizer) -> dict:
    """Every process calls it: load the weights and AdamW moments of `folder` into the (sharded) model and its
    optimizer, each process reading the parts of its own shards; returns train_state. The same number of processes
    as when it was written gives the same shards, hence an exact resume (DCP would also reshard to another number)."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    with _one_process_is_fine():
        dcp.load(state, checkpoint_id=folder, no_dist=not dist.is_initialized())  # in place, into `state`'s tensors
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    return torch.load(os.path.join(folder, TRAIN_STATE), map_location="cpu", weights_only=True)


def load_sharded_weights(model: nn.Module, folder: str) -> nn.Module:
    """The weights of a sharded checkpoint (folder written by save_sharded on any number of processes) into a plain,
    unsharded model in one process, e.g. to export it: then model.save_pretrained(...) writes one Hugging Face
    folder, and for LoRA nanoft.save_adapter(model, ...) a PEFT folder (or merge_and_unload then save_pretrained).
    Build the model as it was trained (same config, add_lora / quantize_model first)."""
    if is_sharded(model):
        raise ValueError("load_sharded_weights loads into a plain model in one process; a sharded model resumes "
                         "with load_sharded(folder, model, optimizer) on every process")
    state = {"model": model.state_dict()}
    with _one_process_is_fine():
        dcp.load(state, checkpoint_id=folder, no_dist=True)  # every shard of every tensor, from the files
    model.load_state_dict(state["model"])
    return model


def full_state_dict(model: nn.Module) -> dict:
    """Every process calls it; rank 0 gets the whole weights (plain CPU tensors), the others {}. For best.pt."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: nn.Module, state_dict: dict) -> None:
    """Every process calls it; rank 0 passes the whole weights (e.g. read from best.pt), the others {}: rank 0
    broadcasts them and each process keeps its own shards."""
    set_model_state_dict(model, state_dict, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


@contextmanager
def _one_process_is_fine():
    """Without a process group DCP warns that it assumes one process: here that is what we mean."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _barrier():
    if dist.is_initialized():
        dist.barrier()
