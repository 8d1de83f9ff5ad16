"""Building the generator, teacher and critic from checkpoints (any layout `sf_core.weights.checkpoint` reads,
official `.pt` included) or from a random initialisation (tests, tiny runs)."""
from __future__ import annotations

import copy

import torch

from sf_core.weights.checkpoint import check_state_dict, load_state_dict, model_config_from
from sf_core.config import DTYPES, ModelConfig
from sf_core.model import CausalWanModel



def load_weights(path: str, attention: str = "auto") -> CausalWanModel:
    """A CausalWanModel (float32) with the weights of `path`."""
    sd, meta = load_state_dict(path)
    cfg = model_config_from(sd, meta, str(path))
    check_state_dict(sd, cfg, str(path))
    model = CausalWanModel(cfg, attention=attention)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model


def random_model(config: ModelConfig, seed: int, scale: float = 0.0, attention: str = "auto") -> CausalWanModel:
    """Deterministic random weights (same on every rank): the module's default init under `seed`, or
    N(0, scale²) everywhere when `scale > 0` (keeps tiny models' activations O(1))."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CausalWanModel(config, attention=attention)
        if scale > 0:
            with torch.no_grad():
                for p in model.parameters():
                    p.normal_(0.0, scale)
    return model


def build_models(model_section, model_config: ModelConfig, need_scores: bool):
    """(generator, teacher, critic) in float32 on the CPU. teacher/critic are None unless `need_scores`.

    Missing paths: the generator is random; the teacher copies the generator's start weights; the critic
    copies the teacher (the official fake score starts from the 1.3B base: set `model.critic` for that).
    """
    m = model_section
    generator = (load_weights(m.generator, m.attention) if m.generator
                 else random_model(model_config, m.init_seed, m.init_scale, m.attention))
    if not need_scores:
        return generator, None, None
    teacher = load_weights(m.teacher, m.attention) if m.teacher else copy.deepcopy(generator)
    critic = load_weights(m.critic, m.attention) if m.critic else copy.deepcopy(teacher)
    return generator, teacher, critic
