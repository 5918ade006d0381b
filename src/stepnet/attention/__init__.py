"""Step-size (attention) modules: ``forward(x, fx) -> h``, block output ``x + fx * h``.

>>> from stepnet.attention import create_attention, list_attention
>>> list_attention()
['cbam', 'eca', 'fca', 'ie', 'none', 'se', 'sem', 'sge', 'srm', 'stepnet']
"""
from .base import (FilteredPoolStepSize, MomentStepSize, PooledStepSize, StepSize, eca_kernel_size,
                   global_avg_pool)
from .cbam import CBAM
from .eca import EfficientChannelAttention
from .fca import FrequencyChannelAttention, dct_filters
from .identity import NoAttention
from .ie import IEBatchNorm1d, IEBatchNorm2d, InstanceEnhancement
from .norms import DescriptorBatchNorm1d, FrozenBatchNorm1d, freeze_batch_norms
from .registry import (attention_options, create_attention, get_attention_class,
                       list_attention, register_attention)
from .se import SqueezeExcitation
from .sem import SwitchableExcitation
from .sge import SpatialGroupEnhance
from .srm import StyleRecalibration
from .stepnet import STEPNET_INPUTS, STEPNET_STRUCTURES, StepNetAdaptor

__all__ = [
    "DescriptorBatchNorm1d", "FrozenBatchNorm1d", "freeze_batch_norms",
    "CBAM", "EfficientChannelAttention", "FrequencyChannelAttention", "IEBatchNorm1d",
    "IEBatchNorm2d", "FilteredPoolStepSize", "InstanceEnhancement", "MomentStepSize",
    "NoAttention", "PooledStepSize", "STEPNET_INPUTS", "STEPNET_STRUCTURES", "SpatialGroupEnhance",
    "SqueezeExcitation", "StepNetAdaptor", "StepSize",
    "StyleRecalibration", "SwitchableExcitation", "attention_options", "create_attention",
    "dct_filters", "eca_kernel_size", "get_attention_class", "global_avg_pool", "list_attention",
    "register_attention",
]
