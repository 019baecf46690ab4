"""Pictures of what was distilled: Pillow drawing primitives, the patterns report, training curves.

    from dpal_cache.viz.patterns import pattern_report   # teacher vs student patch PCA, masks, crowds, embedding
    from dpal_cache.viz.curves import plot_curves         # loss components and learning rate of a run
"""
