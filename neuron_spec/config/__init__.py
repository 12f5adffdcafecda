"""Layer 1: the YAML config as a frozen, typed DeploymentSpec (spec), its hand-written schema
(schema), YAML with positions (yamlread), the instance and architecture tables (catalog) and
the generated field reference (docgen). Standard library and PyYAML only.
"""
