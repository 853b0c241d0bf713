"""Train a small zoo of ReLU MLPs on scikit-learn's bundled digits data and export them.

No download: the 1,797 8x8 digit images ship with scikit-learn. For every
(L, m, seed) this trains an MLPClassifier with L - 1 hidden ReLU layers of
width m and writes its weights as a PyTorch-style state dict in .safetensors
(``0.weight``, ``0.bias``, ``2.weight``, ... as ``nn.Sequential`` of
``Linear`` and ``ReLU`` would name them), plus the held-out test inputs and
labels as .npy. Training is deterministic (fixed split, fixed random_state).

Usage:
    pip install -e ".[examples]"
    python examples/digits/train.py                 # the zoo sweeps/digits.yaml reads
    nnsweep run sweeps/digits.yaml
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE, help="folder for models/ and data/ (default: next to this file)")
    p.add_argument("--L", type=int, nargs="+", default=[3, 4], help="weight layers (default: 3 4)")
    p.add_argument("--m", type=int, nargs="+", default=[32, 64], help="hidden widths (default: 32 64)")
    p.add_argument("--seeds", type=int, default=3, help="networks per (L, m) (default: 3)")
    p.add_argument("--max-iter", type=int, default=300, help="training epochs (default: 300)")
    return p.parse_args(argv)


def load_digits_split() -> tuple[np.ndarray, ...]:
    """Pixels scaled to [0, 1]; a fixed, stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    return train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)


def state_dict(clf) -> dict[str, np.ndarray]:
    """The MLP's layers as nn.Sequential(Linear, ReLU, ..., Linear) names them; Linear is (out, in)."""
    out = {}
    for j, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        out[f"{2 * j}.weight"] = np.ascontiguousarray(w.T, dtype=np.float32)
        out[f"{2 * j}.bias"] = np.asarray(b, dtype=np.float32)
    return out


def train(L: int, m: int, seed: int, x, y, max_iter: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(m,) * (L - 1), activation="relu", alpha=1e-4,
                        max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(x, y)


def main(argv=None) -> dict:
    from safetensors.numpy import save_file

    a = parse_args(argv)
    x_train, x_test, y_train, y_test = load_digits_split()
    (a.out / "models").mkdir(parents=True, exist_ok=True)
    (a.out / "data").mkdir(parents=True, exist_ok=True)
    np.save(a.out / "data" / "x_test.npy", x_test)
    np.save(a.out / "data" / "y_test.npy", y_test.astype(np.int64))
    accuracy = {}
    for L in a.L:
        for m in a.m:
            for seed in range(a.seeds):
                clf = train(L, m, seed, x_train, y_train, a.max_iter)
                save_file(state_dict(clf), str(a.out / "models" / f"digits_L{L}_m{m}_seed{seed}.safetensors"))
                accuracy[f"L{L}_m{m}_seed{seed}"] = float(clf.score(x_test, y_test))
                print(f"L={L} m={m} seed={seed}: test accuracy {accuracy[f'L{L}_m{m}_seed{seed}']:.3f}")
    (a.out / "models" / "accuracy.json").write_text(json.dumps(accuracy, indent=1))
    print(f"wrote {len(accuracy)} networks to {a.out / 'models'} and {len(y_test)} test inputs to {a.out / 'data'}")
    return accuracy


if __name__ == "__main__":
    main()
