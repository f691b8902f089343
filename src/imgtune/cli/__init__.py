"""The ``imgtune`` command line: ``main`` builds the parser from one thin module per command
(flags, one library call, printing) and owns every process-wide setting: the warning format,
logging to the terminal, OpenMP's wait policy. The library never imports this package.
"""
