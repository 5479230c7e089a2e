"""Reconcile, the seed's nightly job: `mc mirror` every pair and report.

runner (the job), mc (the mc process), mc_output (its JSON records), troubleshoot (the
seed's causes and hints) and summary (the report). Nothing is imported here, so the
result models and the report can be used without loading the runner.
"""
