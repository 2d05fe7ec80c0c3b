"""The core maths of Part 2: noise schedules, the forward process, parameterisations and losses;
and flow matching's velocity, its conversions and loss (Part 4: ``flow``, ``flow_matching``).

Book: Part 2 (Diffusion models). Each module's docstrings name the chapter and the paper equation.
"""
