"""Layer 8: the OpenAI-compatible server and the SageMaker entry point: request schemas and
response shapes (openai_api), parsing shared by both doors (frontdoor), chat templates (chat),
the HTTP routes (server) and the SageMaker handlers (sagemaker_entry).
"""
