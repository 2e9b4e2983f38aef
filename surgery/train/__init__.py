"""The sparse training runtime: data, schedules in motion, checkpoints, distributed, reports."""
