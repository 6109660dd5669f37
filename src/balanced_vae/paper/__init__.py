"""The paper's tables and figures (Lin, Roberts, Trigoni, Clark 2019, Section 5) over the public API.

:mod:`.experiments` (budgets, the runs each needs, the paper's values), :mod:`.reproduce`
(one function per table or figure, ``balanced-vae reproduce``) and :mod:`.results_page`
(``docs/RESULTS.md`` from the records). Nothing in the core library imports this package.
"""
