"""Our folder format, re-exported: it is defined on the model floor, in `m3ae.models.io`.

Kept so that ``from m3ae.weights.io import read_metadata, load_state_dict_checked, ...`` keeps
working; new code imports from `m3ae.models.io`.
"""
from m3ae.models.io import (  # noqa: F401
    CHECKSUM_KEY,
    CONFIG_NAME,
    FORMAT,
    FORMAT_VERSION,
    POS_EMBED_KEY,
    RESERVED_KEYS,
    WEIGHTS_NAME,
    LoadReport,
    check_state_dict,
    load_state_dict_checked,
    read_config,
    read_metadata,
    read_preprocessing,
    read_state_dict,
    resize_pos_table,
    save_model,
    verify_weights,
)
