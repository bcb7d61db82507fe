"""The default policy bundle, shipped as package data: policy as data, not code.

``falaj.core.policy.bundle.load_bundle`` reads these files (or the folder named by ``FALAJ_POLICY_DIR``).
"""
