"""bench/isa.py's worker: a digest of each op of the lab's MLP step, in this process's setting.

Run as ``python -m bench.isa --worker ...`` by bench/isa.py, in the environment of one of the
settings (bench/isa_settings.py): every input is built without the ops under test, so a row's
digest changes only where that op's own code path does.
"""

import ctypes
import hashlib
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.isa_settings import BATCH_SIZE, LEARNING_RATE, SEED
from mnistlab.data import load_split, to_float
from mnistlab.models import build_model

# MKL's CNR constants (mkl_service.h): the branch in the low bits, STRICT as a flag.
CBWR_BRANCHES = {1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 8: "SSE4_2", 9: "AVX", 10: "AVX2", 12: "AVX512"}
CBWR_STRICT = 0x10000


def digest(*tensors: Tensor) -> str:
    """The first 12 hex digits of SHA-256 over the tensors' bytes: equal digests mean equal bits."""
    sha = hashlib.sha256()
    for tensor in tensors:
        sha.update(tensor.detach().contiguous().numpy().tobytes())
    return sha.hexdigest()[:12]


def mkl_cbwr_mode() -> str | None:
    """The CNR mode MKL runs (e.g. ``AUTO,STRICT``), read from libtorch_cpu's MKL; None if not found.

    The first call fixes the mode from ``MKL_CBWR`` as any MKL call does.
    """
    try:
        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        cbwr_get = library.mkl_serv_cbwr_get  # what mkl_cbwr_get calls; the public name is not exported
    except (OSError, AttributeError):
        return None
    cbwr_get.restype, cbwr_get.argtypes = ctypes.c_int, [ctypes.c_int]
    mode = cbwr_get(-1)  # MKL_CBWR_ALL
    branch = CBWR_BRANCHES.get(mode & 0xFFFF, str(mode & 0xFFFF))
    return branch + (",STRICT" if mode & CBWR_STRICT else "")


def real_inputs(train_path: Path, rows: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Flattened float images and labels: the first ``rows`` (for ops) and the whole split (for the epoch)."""
    train = load_split(train_path)
    images = to_float(train.images).flatten(1)
    return images[:rows], train.labels[:rows], images, train.labels


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [module for module in model.modules() if isinstance(module, nn.Linear)]


def fixed_mlp(generator: torch.Generator) -> nn.Module:
    """The lab's MLP with weights from ``rand`` (one op at a time, so the same bits on every path).

    Its own initialisation is a row of its own: ``uniform_(-b, b)`` rounds differently per ATen path.
    """
    model = build_model("mlp")
    with torch.no_grad():
        for parameter in model.parameters():
            bound = 1 / parameter.shape[-1] ** 0.5
            parameter.copy_((torch.rand(parameter.shape, generator=generator) * 2 - 1) * bound)
    return model


def op_digests(images: Tensor, labels: Tensor) -> tuple[dict[str, str], dict[str, bool | int | None]]:
    """A digest of each part of the MLP's step, every input built without the ops under test.

    Also whether addmm (the bias added inside MKL's sgemm, beta=1) equals mm then + bias, per layer.
    """
    generator = torch.Generator().manual_seed(1)
    rows = len(images)
    torch.manual_seed(SEED)
    digests = {"init: kaiming_uniform_ (uniform_)": digest(*build_model("mlp").state_dict().values())}
    digests[f"torch.rand {rows}x784"] = digest(torch.rand(images.shape, generator=generator))
    digests[f"torch.randn {rows}x784"] = digest(torch.randn(images.shape, generator=generator))
    mask = torch.empty(rows, 256).bernoulli_(0.6, generator=generator)
    digests["bernoulli_(0.6): dropout mask"] = digest(mask)
    torch.manual_seed(SEED)
    digests["F.dropout(0.4) train"] = digest(F.dropout(images[:, :256], 0.4, training=True))
    model = fixed_mlp(generator)
    layers = linear_layers(model)
    batch, batch_labels = images[:BATCH_SIZE], labels[:BATCH_SIZE]
    # Each layer's input from real pixels (non-negative, many zeros, like a ReLU's output), not from
    # the previous layer, so a difference upstream cannot leak into a row below.
    layer_inputs = (images, images[:, 200:456].contiguous(), images[:, 300:428].contiguous())
    bias_inside_is_bias_after: dict[str, bool | int | None] = {}
    with torch.no_grad():
        for layer, inputs in zip(layers, layer_inputs, strict=True):
            shape = f"{layer.in_features}->{layer.out_features}"
            for count in (rows, BATCH_SIZE):
                with_bias = F.linear(inputs[:count], layer.weight, layer.bias)
                without = F.linear(inputs[:count], layer.weight)
                digests[f"linear {shape} x{count} +bias (addmm)"] = digest(with_bias)
                digests[f"linear {shape} x{count} no bias (mm)"] = digest(without)
                bias_inside_is_bias_after[f"{shape} x{count}"] = torch.equal(with_bias, without + layer.bias)
        digests["relu"] = digest(F.relu(images - 0.5))
        model.eval()
        digests[f"MLP forward, eval, x{rows}"] = digest(model(images.view(-1, 1, 28, 28)))
        logits = torch.rand(rows, 10, generator=generator) * 16 - 8
        digests[f"log_softmax x{rows}x10"] = digest(F.log_softmax(logits, dim=1))
    logits = logits[:BATCH_SIZE].clone().requires_grad_()
    loss = F.cross_entropy(logits, batch_labels)
    loss.backward()
    digests["cross_entropy x256 + grad"] = digest(loss, logits.grad)
    # Autograd's pieces of a Linear's backward, on the batch: grad of the bias (a sum over the batch),
    # of the weight (grad^T @ input) and of the input (grad @ weight).
    grads = [torch.rand(BATCH_SIZE, layer.out_features, generator=generator) * 2 - 1 for layer in layers]
    with torch.no_grad():
        digests["bias grad: sum(0) x256"] = digest(*(grad.sum(0) for grad in grads))
        weight_grads = [grad.t() @ inputs[:BATCH_SIZE] for grad, inputs in zip(grads, layer_inputs, strict=True)]
        digests["weight grad: grad^T @ input (mm)"] = digest(*weight_grads)
        input_grads = [grad @ layer.weight for grad, layer in zip(grads, layers, strict=True)]
        digests["input grad: grad @ weight (mm)"] = digest(*input_grads)
    F.cross_entropy(model(batch.view(-1, 1, 28, 28)), batch_labels).backward()
    digests["MLP backward, eval, x256"] = digest(*(parameter.grad for parameter in model.parameters()))
    step_grads = [torch.rand(2, *parameter.shape, generator=generator) * 2 - 1 for parameter in model.parameters()]
    for foreach in (True, False):
        copy = fixed_mlp(torch.Generator().manual_seed(2))
        optimizer = torch.optim.RMSprop(copy.parameters(), lr=LEARNING_RATE, foreach=foreach)
        for step in range(2):  # the second step reads a non-zero square_avg
            for parameter, grad in zip(copy.parameters(), step_grads, strict=True):
                parameter.grad = grad[step]
            optimizer.step()
        digests[f"RMSprop step x2 (foreach={foreach})"] = digest(*copy.parameters())
    bias_inside_is_bias_after["first K where they differ"] = first_k_where_addmm_differs(generator)
    return digests, bias_inside_is_bias_after


def first_k_where_addmm_differs(generator: torch.Generator) -> int | None:
    """The smallest inner size K at which addmm rounds differently from mm + bias: MKL's K block.

    ATen's addmm copies the bias into the output and calls sgemm with beta=1, so the bias joins the
    sum at MKL's first block of K and every later block adds to a rounded partial sum.
    """
    for inner in range(8, 808, 8):
        inputs, weight = torch.rand(256, inner, generator=generator), torch.rand(64, inner, generator=generator) - 0.5
        bias = torch.rand(64, generator=generator)
        if not torch.equal(F.linear(inputs, weight, bias), F.linear(inputs, weight) + bias):
            return inner
    return None


def train_epoch(images: Tensor, labels: Tensor, steps: int | None) -> tuple[str, float, float]:
    """One epoch (or its first ``steps`` steps) of the lab's MLP in plain torch.

    Returns the trained weights' digest, the wall seconds and the process's CPU seconds (all threads).
    """
    torch.manual_seed(SEED)
    model = build_model("mlp")
    optimizer = torch.optim.RMSprop(model.parameters(), lr=LEARNING_RATE, foreach=True)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SEED))
    batches = order.split(BATCH_SIZE)[:steps]
    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    for batch in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images[batch].view(-1, 1, 28, 28)), labels[batch])
        loss.backward()
        optimizer.step()
    return digest(*model.parameters()), time.perf_counter() - start, time.process_time() - cpu_start


def step_dispatch(images: Tensor, labels: Tensor) -> list[str]:
    """The aten ops one training step runs, as torch.profiler names them, in order of first call."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(SEED)
    model = build_model("mlp")
    optimizer = torch.optim.RMSprop(model.parameters(), lr=LEARNING_RATE, foreach=True)
    batch = slice(0, BATCH_SIZE)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        F.cross_entropy(model(images[batch].view(-1, 1, 28, 28)), labels[batch]).backward()
        optimizer.step()
    names = [event.name for event in profiler.events() if event.name.startswith(("aten::", "Optimizer"))]
    return list(dict.fromkeys(names))


def worker(
    train_path: Path, setting: dict[str, str], threads: int, steps: int | None, late_env: dict[str, str], dispatch: bool
) -> dict:
    """Everything one fresh process measures in the setting its environment gave at launch."""
    if "MKL_CBWR" not in setting:  # importing mnistlab pinned it; MKL reads it at its first call, not yet made
        os.environ.pop("MKL_CBWR", None)
    torch.set_num_threads(threads)
    rows_images, rows_labels, images, labels = real_inputs(train_path, rows=12000)
    if late_env.pop("matmul_first", None):
        torch.ones(4, 4) @ torch.ones(4, 4)  # any MKL call fixes the CNR mode
    os.environ.update(late_env)  # after `import torch`, before (or after) MKL's first call
    result = {
        "threads": threads,
        "mkl_cbwr": mkl_cbwr_mode(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if dispatch:
        result["step_ops"] = step_dispatch(rows_images, rows_labels)
        return result
    result["ops"], result["addmm_is_mm_plus_bias"] = op_digests(rows_images, rows_labels)
    result["epoch"], result["epoch_s"], result["epoch_cpu_s"] = train_epoch(images, labels, steps)
    return result
