"""sslops: self-supervised pretraining done properly.

Validated data -> augmentation cache -> pretraining -> registered checkpoint -> label-efficient
evaluation, with every number traceable to its data, code and parameters.
"""

__version__ = "0.1.0"
