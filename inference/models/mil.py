"""Gated attention pooling for multiple-instance learning (Ilse, Tomczak and Welling, 2018).

A case is a bag of patch feature vectors h_1..h_K (from the cancer areas of its slides). Each
instance gets an attention score

    a_k = softmax_k( w^T ( tanh(V h_k) * sigmoid(U h_k) ) )

and the bag is z = sum_k a_k h_k. Seed 001 (Xu et al. 2021, DL-CNB) classifies z into the node
status; DL-CNB+C concatenates the case's clinical variables to z before the classifier.

Bags of different sizes are padded into one (B, K_max, D) batch with a mask: padded instances get
-inf before the softmax, so each bag's weights equal those of the bag run alone (tested).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["GatedAttentionMIL"]


class GatedAttentionMIL(nn.Module):
    """Instance embedding -> gated attention pooling -> [clinical concat] -> classifier."""

    name = "gated-attention-mil"

    def __init__(
        self,
        *,
        in_features: int,
        num_classes: int = 2,
        hidden: int = 128,
        attention_hidden: int = 64,
        clinical_features: int = 0,
        clinical_hidden: int = 16,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 2:
            raise ValueError("need at least one feature and two classes")
        self.config: dict[str, Any] = {
            "in_features": in_features,
            "num_classes": num_classes,
            "hidden": hidden,
            "attention_hidden": attention_hidden,
            "clinical_features": clinical_features,
            "clinical_hidden": clinical_hidden,
            "dropout": dropout,
        }
        self.embed = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Linear(hidden, attention_hidden)  # V (tanh branch)
        self.attention_u = nn.Linear(hidden, attention_hidden)  # U (sigmoid gate)
        self.attention_w = nn.Linear(attention_hidden, 1)  # w
        self.clinical: nn.Module | None = None
        pooled = hidden
        if clinical_features:
            self.clinical = nn.Sequential(nn.Linear(clinical_features, clinical_hidden), nn.ReLU())
            pooled += clinical_hidden
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(pooled, num_classes))

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    @property
    def uses_clinical(self) -> bool:
        return self.clinical is not None

    def attention_scores(self, h: torch.Tensor) -> torch.Tensor:
        """Unnormalised gated attention of embedded instances (..., hidden) -> (...)."""
        gate = torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
        return self.attention_w(gate).squeeze(-1)

    def forward(
        self,
        features: torch.Tensor,
        mask: torch.Tensor | None = None,
        clinical: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, D) instance features (mask (B, K), True = real instance) -> logits (B, C) and
        attention weights (B, K) summing to one over each bag's real instances."""
        if features.dim() == 2:
            features = features.unsqueeze(0)
        h = self.embed(features)
        scores = self.attention_scores(h)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        pooled = torch.bmm(weights.unsqueeze(1), h).squeeze(1)
        if self.clinical is not None:
            if clinical is None:
                raise ValueError("this model was trained with clinical variables: pass them")
            pooled = torch.cat([pooled, self.clinical(clinical)], dim=1)
        return self.classifier(pooled), weights

    def forward_one_by_one(
        self, bags: list[torch.Tensor], clinical: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The unbatched reference: each bag on its own (batch size 1), as the original AMIL code
        trains. Same results as :meth:`forward` on the padded batch; the benchmark's baseline."""
        logits, weights = [], []
        for i, bag in enumerate(bags):
            c = clinical[i : i + 1] if clinical is not None else None
            out, w = self.forward(bag.unsqueeze(0), None, c)
            logits.append(out)
            weights.append(w[0])
        return torch.cat(logits), weights
