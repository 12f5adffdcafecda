"""Layer 9: SageMaker deployment: packaging and endpoints (sagemaker), auto scaling (autoscale),
resumable checkpoint uploads (upload) and the AWS region and images (awsregion).
"""
