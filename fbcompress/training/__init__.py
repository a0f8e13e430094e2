"""Training: the shared loop, the teacher's and the student's objectives, adaptive loss, masking, DDP."""
