"""The UniMat representation: a crystal as a periodic-table tensor x in R^{L x H x W x 3}.

    from unimat_dist.representation import UniMatSpec, encode, decode
    spec = UniMatSpec(max_atoms_per_element=4)          # full 9 x 18 table, fractional coordinates
    t = encode(structure, spec)                          # t.positions (4, 9, 18, 3), t.lattice (6,)
    same = decode(t, spec)                               # pymatgen Structure

See ``periodic_table`` for the layout, ``normalize`` for the model-space transforms and the decoding
rule for noisy output, and ``augment`` for the valid augmentations.
"""
from .augment import random_rotation, random_translation, shuffle_slots
from .codec import (
    UniMatBatch,
    UniMatTensor,
    decode,
    decode_arrays,
    decode_batch,
    encode,
    encode_arrays,
    encode_batch,
    infer_mask,
    structure_arrays,
)
from .conditioning import count_mask, element_mask, parse_composition
from .lattice import clip_params, matrix_to_params, params_to_matrix
from .normalize import LatticeStats, Normalizer, batch_to_model, structures_from_model
from .periodic_table import CELL_OF, SYMBOLS, Z_OF, table_ascii
from .spec import NULL_VALUE, UniMatSpec, spec_for_elements

__all__ = [
    "CELL_OF",
    "LatticeStats",
    "NULL_VALUE",
    "Normalizer",
    "SYMBOLS",
    "UniMatBatch",
    "UniMatSpec",
    "UniMatTensor",
    "Z_OF",
    "batch_to_model",
    "clip_params",
    "count_mask",
    "decode",
    "decode_arrays",
    "decode_batch",
    "element_mask",
    "encode",
    "encode_arrays",
    "encode_batch",
    "infer_mask",
    "matrix_to_params",
    "params_to_matrix",
    "parse_composition",
    "random_rotation",
    "random_translation",
    "shuffle_slots",
    "spec_for_elements",
    "structure_arrays",
    "structures_from_model",
    "table_ascii",
]
