"""PyTorch MLP adapter. Weights are a plain ``state_dict`` (no pickled module), so a bundle
loads on any torch that can build the same layers. CUDA is used where there is one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from healmesh import features
from healmesh.models.bundle import BundleMeta
from healmesh.settings import get_settings

WEIGHTS = "state_dict.pt"


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def build_network(n_inputs: int, hidden: Sequence[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_inputs
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class Scaler:
    """log1p on the skewed numeric columns, then standardisation of all numeric columns."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = mean.astype(np.float32)
        self.std = std.astype(np.float32)

    @staticmethod
    def _log(X: np.ndarray) -> np.ndarray:
        out = X.astype(np.float32, copy=True)
        cols = list(features.active().skewed_columns)
        out[:, cols] = np.log1p(out[:, cols])
        return out

    @classmethod
    def fit(cls, X: np.ndarray) -> Scaler:
        logged = cls._log(X)[:, : features.active().n_numeric]
        return cls(logged.mean(axis=0), logged.std(axis=0) + 1e-6)

    def transform(self, X: np.ndarray) -> np.ndarray:
        out = self._log(X)
        out[:, : features.active().n_numeric] = (out[:, : features.active().n_numeric] - self.mean) / self.std
        return out

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


class MLPModel:
    kind: ClassVar[str] = "mlp"

    def __init__(self, net: nn.Sequential, scaler: Scaler, hidden: Sequence[int], dropout: float,
                 device: torch.device) -> None:
        self.net = net.to(device).eval()
        self.scaler = scaler
        self.hidden = list(hidden)
        self.dropout = dropout
        self.device = device

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, *,
            hidden: Sequence[int] = (64, 32), dropout: float = 0.1, epochs: int = 30,
            batch_size: int = 512, lr: float = 2e-3, patience: int = 4, seed: int = 0,
            device: str = "auto") -> MLPModel:
        torch.manual_seed(seed)
        dev = pick_device(device)
        scaler = Scaler.fit(X)
        net = build_network(X.shape[1], hidden, dropout).to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
        loss_fn = nn.BCEWithLogitsLoss()
        xt = torch.from_numpy(scaler.transform(X)).to(dev)
        yt = torch.from_numpy(y.astype(np.float32)).to(dev)
        xv = torch.from_numpy(scaler.transform(X_val)).to(dev)
        yv = torch.from_numpy(y_val.astype(np.float32)).to(dev)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        best_loss, best_state, stale = float("inf"), None, 0
        for _ in range(epochs):
            net.train()
            order = torch.randperm(len(xt), generator=gen).to(dev)
            for start in range(0, len(xt), batch_size):
                idx = order[start : start + batch_size]
                opt.zero_grad()
                loss = loss_fn(net(xt[idx]).squeeze(1), yt[idx])
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                val_loss = float(loss_fn(net(xv).squeeze(1), yv))
            if val_loss < best_loss - 1e-5:
                best_loss, stale = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                stale += 1
                if stale >= patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        return cls(net, scaler, hidden, dropout, dev)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            xt = torch.from_numpy(self.scaler.transform(X)).to(self.device)
            return torch.sigmoid(self.net(xt).squeeze(1)).double().cpu().numpy()

    def bundle_extra(self) -> dict[str, Any]:
        return {"scaler": self.scaler.to_dict(), "hidden": self.hidden, "dropout": self.dropout}

    def save_weights(self, directory: Path) -> None:
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        torch.save(state, directory / WEIGHTS)

    @classmethod
    def load_weights(cls, directory: Path, meta: BundleMeta) -> MLPModel:
        settings = get_settings()
        torch.set_num_threads(settings.model_threads)  # process-wide: a scorer serves one model family
        extra = meta.extra
        dev = pick_device(settings.torch_device)
        net = build_network(len(meta.encoded_features), extra["hidden"], extra["dropout"])
        # weights_only: refuse anything but tensors (no code execution from a model file)
        net.load_state_dict(torch.load(directory / WEIGHTS, map_location=dev, weights_only=True))
        scaler = Scaler(np.array(extra["scaler"]["mean"]), np.array(extra["scaler"]["std"]))
        return cls(net, scaler, extra["hidden"], extra["dropout"], dev)

    def with_meta(self, meta: BundleMeta) -> BundleMeta:
        return replace(meta, extra={**meta.extra, **self.bundle_extra()})
