"""Training data: prompt files, cached text embeddings, ODE pairs and real latents, sharded over ranks.

Every source is read through a `ShardedCursor`: a deterministic, epoch-shuffled order of item indices
(seeded), of which each rank takes its own slice of every global batch. Its whole state is one integer
(global samples consumed), so a resumed run reads exactly the items an uninterrupted run would.

File formats (safetensors):
- ODE pairs: the `sf_core.train.ode_pairs` format (`latents` [N, K, F, C, h, w], noise first, clean last;
  optional `context` [N, L, D]; prompts in the `sf_ode` metadata).
- Latents (GAN real data, teacher/diffusion forcing targets): `latents` [N, F, C, h, w], plus optional
  `context` [N, L, D] or metadata `prompts` (JSON list of N strings).
- Text-embedding cache: one file per prompt, `<sha256(encoder id, prompt)>.safetensors` holding
  `embedding` [n, D] (rows past the prompt's last token are zero and not stored).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from sf_core.weights.checkpoint import write_safetensors_atomic


class DataError(ValueError):
    """A training data file is missing, empty or malformed."""


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line; blank lines are skipped."""
    path = Path(path)
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise DataError(f"{path}: no prompts (expected one prompt per line)")
    return prompts


# -- text embeddings ---------------------------------------------------------------------------------------
class EmbeddingCache:
    """Prompt -> `[text_len, D]` embedding, computed once by `encoder` and kept as safetensors on disk.

    `encoder` is any object with `encode(list[str]) -> [B, L, D]` (e.g. `sf_core.text.encoder.TextEncoder`); it
    may be None when every needed prompt is already cached: the cache then uses the encoder id recorded
    in `<folder>/encoder_id` by the run that filled it.
    """

    def __init__(self, folder: str | Path, encoder, encoder_id: str | None, text_len: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        record = self.folder / "encoder_id"
        if encoder_id is None:
            if not record.is_file():
                raise DataError(f"{self.folder}: no text encoder configured and no cached embeddings "
                                "(encoder_id missing); set data.text_encoder or run `python -m sf_core.train encode`")
            encoder_id = record.read_text(encoding="utf-8").strip()
        elif not record.is_file() or record.read_text(encoding="utf-8").strip() != encoder_id:
            tmp = record.with_name(f".encoder_id.{os.getpid()}")
            tmp.write_text(encoder_id + "\n", encoding="utf-8")
            os.replace(tmp, record)
        self.encoder, self.encoder_id, self.text_len = encoder, encoder_id, text_len

    def path_for(self, prompt: str) -> Path:
        digest = hashlib.sha256(f"{self.encoder_id}\0{prompt}".encode("utf-8")).hexdigest()
        return self.folder / f"{digest}.safetensors"

    def _read(self, path: Path) -> torch.Tensor:
        with safe_open(str(path), "pt") as f:
            emb = f.get_tensor("embedding")
        out = torch.zeros(self.text_len, emb.shape[-1], dtype=emb.dtype)
        n = min(self.text_len, emb.shape[0])
        out[:n] = emb[:n]
        return out

    def get(self, prompts: list[str]) -> torch.Tensor:
        """[B, text_len, D] for the prompts, encoding (and caching) the ones not seen before."""
        todo = [p for p in dict.fromkeys(prompts) if not self.path_for(p).is_file()]
        if todo:
            if self.encoder is None:
                raise DataError(f"text embedding of {todo[0]!r} is not in {self.folder} and no text encoder "
                                "is configured (data.text_encoder)")
            embs = self.encoder.encode(todo).cpu()  # [n, L, D]
            for prompt, emb in zip(todo, embs):
                used = int((emb.abs().sum(-1) > 0).nonzero().max()) + 1 if emb.abs().sum() > 0 else 0
                write_safetensors_atomic({"embedding": emb[:max(used, 1)].clone()}, self.path_for(prompt),
                                         {"prompt": prompt, "encoder": self.encoder_id})
        return torch.stack([self._read(self.path_for(p)) for p in prompts])


# -- datasets ------------------------------------------------------------------------------------------------
class TensorFileDataset:
    """Items of one big tensor, with optional per-item contexts [N, L, D] or prompts (N strings)."""

    def __init__(self, source: str, items: torch.Tensor, contexts: torch.Tensor | None, prompts: list[str] | None,
                 item_dims: int, what: str):
        if items.dim() != item_dims + 1 or items.shape[0] == 0:
            raise DataError(f"{source}: {what} has shape {tuple(items.shape)}, expected {item_dims + 1} dims "
                            "with N >= 1 items first")
        n, prompts = items.shape[0], prompts or None
        if prompts is not None and len(prompts) != n:
            raise DataError(f"{source}: {len(prompts)} prompts for {n} items")
        if contexts is not None and contexts.shape[0] != n:
            raise DataError(f"{source}: 'context' has {contexts.shape[0]} rows for {n} items")
        self.items, self.contexts, self.prompts = items, contexts, prompts

    def __len__(self) -> int:
        return self.items.shape[0]


def ode_pair_dataset(path) -> TensorFileDataset:
    """A file written by `sf_core.train.ode_pairs.save_ode_pairs`: `latents` [N, K, F, C, h, w]."""
    from .ode_pairs import load_ode_pairs
    if not Path(path).is_file():
        raise DataError(f"ODE-pair file {path} not found")
    tensors, settings = load_ode_pairs(str(path))
    return TensorFileDataset(str(path), tensors["latents"], tensors.get("context"), settings.get("prompts"), 5,
                             "'latents'")


def latent_dataset(path) -> TensorFileDataset:
    """Real clips: `latents` [N, F, C, h, w], optional `context` [N, L, D] or metadata `prompts` (JSON)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"latent file {path} not found")
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata() or {}
        if "latents" not in keys:
            raise DataError(f"{path}: tensor 'latents' missing (found {sorted(keys)}); expected [N, F, C, h, w]")
        items = f.get_tensor("latents")
        contexts = f.get_tensor("context") if "context" in keys else None
    prompts = json.loads(meta["prompts"]) if "prompts" in meta else None
    return TensorFileDataset(str(path), items, contexts, prompts, 4, "'latents'")


# -- deterministic sharding ---------------------------------------------------------------------------------------
class ShardedCursor:
    """Global sample order: epoch e is a permutation of range(n) seeded by (seed, e) (or identity when not
    shuffling). A global batch is the next `batch × world` samples; rank r takes its `batch` slice."""

    def __init__(self, n: int, seed: int, shuffle: bool, rank: int, world: int, batch: int):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world, self.batch = rank, world, batch
        self.position = 0                    # global samples consumed
        self._epoch, self._perm = -1, None

    def _index(self, i: int) -> int:
        epoch, j = divmod(i, self.n)
        if epoch != self._epoch:
            self._epoch = epoch
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        return int(self._perm[j])

    def next(self) -> list[int]:
        start = self.position + self.rank * self.batch
        idx = [self._index(start + k) for k in range(self.batch)]
        self.position += self.batch * self.world
        return idx


class BatchSource:
    """Produces the fields of a TrainBatch for this rank: context, negative context, latents, ODE trajectory.

    Contexts come from the prompts file when there is one, else from the data file's own contexts/prompts.
    """

    def __init__(self, *, prompts: list[str] | None, embeddings: EmbeddingCache | None, negative_prompt: str | None,
                 ode_pairs: TensorFileDataset | None, latents: TensorFileDataset | None,
                 seed: int, shuffle: bool, rank: int, world: int, batch: int):
        self.prompts, self.embeddings = prompts, embeddings
        self.ode_pairs, self.latents = ode_pairs, latents
        mk = lambda n, salt: ShardedCursor(n, seed + salt, shuffle, rank, world, batch)  # noqa: E731
        self.cursors: dict[str, ShardedCursor] = {}
        if prompts is not None:
            self.cursors["prompts"] = mk(len(prompts), 0)
        if ode_pairs is not None:
            self.cursors["ode_pairs"] = mk(len(ode_pairs), 1)
        if latents is not None:
            self.cursors["latents"] = mk(len(latents), 2)
        if not self.cursors:
            raise DataError("no training data configured: set data.prompts, data.ode_pairs or data.latents")
        self.negative = None
        if negative_prompt is not None and embeddings is not None:
            self.negative = embeddings.get([negative_prompt])  # [1, L, D]

    def state_dict(self) -> dict[str, int]:
        return {name: c.position for name, c in self.cursors.items()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for name, c in self.cursors.items():
            c.position = int(state.get(name, 0))

    def _context_of(self, ds: TensorFileDataset, idx: list[int]) -> torch.Tensor | None:
        if ds.contexts is not None:
            return ds.contexts[idx].float()
        if ds.prompts is not None and self.embeddings is not None:
            return self.embeddings.get([ds.prompts[i] for i in idx])
        return None

    def next(self) -> dict[str, torch.Tensor | None]:
        out = {"context": None, "negative_context": None, "latents": None, "ode_trajectory": None}
        if "ode_pairs" in self.cursors:
            idx = self.cursors["ode_pairs"].next()
            out["ode_trajectory"] = self.ode_pairs.items[idx].float()
            out["context"] = self._context_of(self.ode_pairs, idx)
        if "latents" in self.cursors:
            idx = self.cursors["latents"].next()
            out["latents"] = self.latents.items[idx].float()
            if out["context"] is None:
                out["context"] = self._context_of(self.latents, idx)
        if "prompts" in self.cursors:
            idx = self.cursors["prompts"].next()
            out["context"] = self.embeddings.get([self.prompts[i] for i in idx])
        if out["context"] is None:
            raise DataError("the data files carry neither `contexts` nor `prompts`, and no prompts file is set")
        if self.negative is not None:
            out["negative_context"] = self.negative.expand(out["context"].shape[0], -1, -1).contiguous()
        return out
