"""Token ids shared by the denoisers and the diffusion process: the grammar's visible symbols are
0..v-1 and MASK, the absorbing state, is v; a denoiser embeds v + 1 ids and predicts v."""


def mask_id(vocab_size: int) -> int:
    return vocab_size


def n_input_ids(vocab_size: int) -> int:
    """Ids a denoiser embeds: the symbols and MASK."""
    return mask_id(vocab_size) + 1
