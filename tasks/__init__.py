"""Naming rule: an operation is one function named verb_noun; a flow step is it, decorated @task.

The task's name is the function's with hyphens (``delete_service`` → ``delete-service``); an
operation that uses another one calls the plain function as ``delete_service.fn(...)``.
"""
