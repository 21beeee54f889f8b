"""The experiment config: `schema` (typed defaults, the ground floor) and `load` (YAML, overrides,
validation against the registries). The schema's classes are re-exported here; the loading
functions are imported from `metafew.config_load`, which sits above the algorithm and dataset
registries and so cannot be imported by them."""

from metafew.config.schema import (
    AlgorithmConfig,
    Config,
    DataConfig,
    EvalConfig,
    FashionMNISTConfig,
    FinetuneConfig,
    FolderConfig,
    GlyphsConfig,
    MAMLConfig,
    ModelConfig,
    OmniglotConfig,
    ReptileConfig,
    RuntimeConfig,
    TaskConfig,
    TrainConfig,
    comma_list,
)

__all__ = [
    "AlgorithmConfig",
    "Config",
    "DataConfig",
    "EvalConfig",
    "FashionMNISTConfig",
    "FinetuneConfig",
    "FolderConfig",
    "GlyphsConfig",
    "MAMLConfig",
    "ModelConfig",
    "OmniglotConfig",
    "ReptileConfig",
    "RuntimeConfig",
    "TaskConfig",
    "TrainConfig",
    "comma_list",
]
