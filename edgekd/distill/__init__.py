"""Knowledge distillation: losses, the training loop, the teacher-output cache."""
