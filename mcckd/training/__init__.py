"""Student training: settings (:mod:`.config`, no torch), losses, the step and the loop.

Nothing is imported here: the flows read :mod:`.config` without torch, and the step runs on a bare
torch machine without pydantic.
"""


def uses_consistency_term(alpha: float) -> bool:
    """Whether a run with this ``alpha`` is MCC-KD (the loss adds alpha x answer consistency) rather
    than Std-CoT (``alpha == 0``): the one place that reads ``alpha`` so (``TrainConfig.uses_consistency``,
    the loss, the step). A negative ``alpha``, which ``TrainConfig`` refuses, is an error here too."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0 (0 = Std-CoT; > 0 = MCC-KD), got {alpha}")
    return alpha > 0
