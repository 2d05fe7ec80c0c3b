"""The core maths of Part 2: noise schedules, the forward process, parameterisations and losses.

Book: Part 2 (Diffusion models). Each module's docstrings name the chapter and the paper equation.
"""
