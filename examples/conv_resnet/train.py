"""Train the example's ConvResNet on the spec's training split and save its weights for the spec.

    python examples/conv_resnet/train.py [--data-dir DIR] [--epochs 3] [--spec examples/conv_resnet/spec.toml]

Then ``koopmanlens run examples/conv_resnet/spec.toml --data-dir DIR`` studies it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model import train_convnet
from safetensors.torch import save_file

from koopmanlens.experiment import build_data
from koopmanlens.spec import load_spec

HERE = Path(__file__).resolve().parent


def main(spec_path: Path, data_dir: str | None, epochs: int, seed: int = 0) -> Path:
    spec, base = load_spec(spec_path)
    train = build_data(spec, base, data_dir, test=False)["train"]  # the test split is not read
    net = train_convnet(train, epochs, seed)
    out = (base or HERE) / (spec.network.weights or "conv_resnet.safetensors")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=HERE / "spec.toml")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    print(f"weights written to {main(args.spec, args.data_dir, args.epochs)}")
