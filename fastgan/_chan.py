"""Chan et al.'s exact merge of per-process batch statistics, in torch ops (issue 17): what the
reference synchronized batch norm and the triton backend's bn_gather_finalize compute, and what the
cpu and cuda bn_gather_finalize kernels compute in one pass (csrc/schemas.h)."""


def merge_rows(rows):
    """(mean, biased var, count as a one-element tensor) over all processes from rows [P, 2C + 1],
    process p's row (count, mean [C], biased var [C]): mean = sum n_p mean_p / n,
    M2 = sum n_p var_p + sum n_p (mean_p - mean)^2, var = M2 / n."""
    c = (rows.shape[1] - 1) // 2
    counts, means, variances = rows[:, :1], rows[:, 1:c + 1], rows[:, c + 1:]
    count = counts.sum(0)
    mean = (counts * means).sum(0) / count
    m2 = (counts * variances).sum(0) + (counts * (means - mean).square()).sum(0)
    return mean, m2 / count, count
