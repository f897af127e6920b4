"""The lab's two networks as plain ``nn.Module``s, and their torchinfo summary."""

from torch import Tensor, nn

INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10


class MNISTModel(nn.Module):
    """The lab's MLP: 784-256-128-10, ReLU, dropout 0.4 and 0.3 (235,146 parameters)."""

    def __init__(self, dropout1: float = 0.4, dropout2: float = 0.3) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 256), nn.ReLU(), nn.Dropout(dropout1))
        self.layer2 = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Dropout(dropout2))
        self._forward = nn.Sequential(self.layer1, self.layer2, nn.Linear(128, NUM_CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        return self._forward(x)


class MNIST_MLR(nn.Module):
    """The lab's multinomial logistic regression: 784-10 (7,850 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, NUM_CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


MODELS: dict[str, type[nn.Module]] = {"mlp": MNISTModel, "mlr": MNIST_MLR}


def build_model(name: str, **options: float) -> nn.Module:
    """A freshly initialised network by its params name (``mlp`` or ``mlr``); ``options``: e.g. the MLP's dropout."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    return MODELS[name](**options)


def summarize(model: nn.Module, batch_size: int) -> str:
    """The table the lab prints: input and output size and parameters per layer."""
    from torchinfo import summary

    table = summary(
        model,
        input_size=(batch_size, *INPUT_SHAPE),
        col_names=["input_size", "output_size", "num_params"],
        device="cpu",
        verbose=0,
    )
    return str(table)
