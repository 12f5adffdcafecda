"""neuron-spec: speculative decoding for Llama on AWS Inferentia2 and Trainium.

Importing the package is cheap: heavy libraries (torch, transformers, transformers-neuronx,
boto3) are imported only by the features that need them.
"""

__version__ = "0.1.0"
