"""The vLLM scheduler's former home: `meshplan.serve.schedulers` holds every engine's."""

from meshplan.serve.schedulers.base import RequestState, Scheduler, Step
from meshplan.serve.schedulers.vllm import VLLMScheduler

__all__ = ["RequestState", "Scheduler", "Step", "VLLMScheduler"]
