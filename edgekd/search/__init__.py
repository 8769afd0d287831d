"""The student search (student.name: auto, `edgekd search`): Optuna over students and their distillation."""
