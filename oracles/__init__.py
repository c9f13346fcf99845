"""Relevance oracles (kvpress style: a small dataclass per oracle over `base.RelevanceOracle`,
which holds the mechanics): chunks and questions embedded in one space, inner product =
relevance. `fusion` combines several oracles' scores."""


def make_encoder_oracle(kind: str, path: str, device: str = "cpu"):
    """VIDEOKV_ORACLE=kind:path -> the oracle."""
    from .encoders import CLIPOracle, SigLIPOracle
    if kind == "clip":
        return CLIPOracle(path=path, device=device)
    if kind == "siglip":
        return SigLIPOracle(path=path, device=device)
    if kind == "languagebind":
        from .languagebind import LanguageBindOracle
        return LanguageBindOracle(path=path, device=device)
    raise ValueError(f"unknown encoder oracle {kind!r}; known: clip, siglip, languagebind")
