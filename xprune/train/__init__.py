"""Training: the loop that trains or fine-tunes a detector with its family's own loss, checkpointing every epoch so
an interrupted run resumes, and the reference models trained with it."""
