"""MF-BPR: matrix factorisation trained with Bayesian Personalised Ranking.

Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009.

    ŷ_ui = e_uᵀ e_i
    L = Σ_(u,i,j) -ln σ(ŷ_ui - ŷ_uj) + λ ‖Θ_batch‖²

Symbols: e_u, e_i → `user_emb`, `item_emb`; λ → `reg`. The -ln σ term is the run's ranking
loss (models.base.RankingLoss): BPR as here, or the sampled softmax on dense logs.

λ = 1e-2 (a mean over the batch's rows, so independent of the batch size), chosen on validation
Recall@20 with every other setting at its default: ml-100k 0.3075 (λ = 1e-4), 0.3083 (1e-3),
0.3229 (1e-2); yelp-sslrec 0.0189 (1e-4; below MostPop: it overfits in 10 epochs), 0.0275 and
falling (1e-3), 0.0634 (1e-2); the sample 0.7265 (1e-4), 0.7259 (1e-2).

Where the softmax is derived, MF's temperature is 2 where the graph models' is 1: without
propagation it overfits sooner at τ 1. Validation Recall@20 (`recsys train DATA --model mf
--loss-temperature T`), τ 2 against τ 1: chosen on ml-100k (0.3431 against 0.3241), confirmed
on ml-100k with every rating (0.3231 against 0.3088; BPR 0.3199) and gowalla (0.1702 at epoch
6 against 0.1576 at epoch 5; test 0.1366 against 0.1247).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recsys.models.base import RANKING_SEARCH, Batch, EmbeddingRecommender, Search, l2_penalty


@dataclass
class MFParams:
    dim: int = field(default=64, metadata={"help": "embedding size d", "min": 1, "max": 4096})
    reg: float = field(
        default=1e-2,
        metadata={"help": "L2 weight on the batch's embeddings", "aliases": ("emb_reg",), "min": 0},
    )


class MF(EmbeddingRecommender):
    name = "mf"
    Params = MFParams
    train_defaults = {"loss_temperature": 2.0}  # see the module docstring
    search_space = {
        **RANKING_SEARCH,
        "lr": Search(1e-3, 3e-2, log=True),
        "reg": Search(1e-6, 1e-1, log=True),
        "dim": Search(choices=(32, 64, 128)),
    }

    def final_embeddings(self, graph):
        return self.user_emb, self.item_emb

    def loss_terms(self, batch: Batch, graph):
        u, p, n = batch.rows(self.user_emb, self.item_emb)
        return {**self.ranking(u, p, n), "reg": self.params.reg * l2_penalty(u, p, n)}
