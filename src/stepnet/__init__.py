"""stepnet: self-attention as a dynamical system.

Step-size (attention) modules and the backbones of the StepNet paper (Huang et al., ICCV 2023).

>>> import stepnet
>>> model = stepnet.create_model("resnet164", num_classes=10, attention="stepnet")
"""
from . import attention, models
from .attention import create_attention, list_attention
from .models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["attention", "create_attention", "create_model", "list_attention", "list_models",
           "models"]
