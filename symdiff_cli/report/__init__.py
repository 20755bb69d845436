"""The HTML report of `symdiff evaluate --report`: statistics, plots and one self-contained page.

stats.py gathers what the page shows from molecules and their metric reports; reference.py
keeps the same statistics of the QM9 test split in the cache; plots.py and depict.py turn them
into inline images; runs.py reads training runs; page.py fills the template in templates/.
Nothing here draws progress bars: long loops take an `advance` callback from the command.
"""
