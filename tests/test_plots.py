import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from imgcls_utils import plots
from imgcls_utils.scan import scan_image_folder
from tests.sample_files import write_copy, write_photo


def test_duplicate_groups_are_shown_side_by_side_one_row_per_group(tmp_path, make_config):
    folder = tmp_path / "images"
    for c, label in enumerate(("cat", "dog")):
        for i in range(3):
            write_photo(folder / label / f"{i}.png", seed=10 * c + i)
    write_copy(folder / "cat" / "0.png", folder / "dog" / "copy_of_cat.jpg", scale=1.5)
    write_copy(folder / "cat" / "1.png", folder / "cat" / "1_small.jpg", scale=0.7)
    scan = scan_image_folder(folder, make_config().data)
    fig = plots.plot_duplicate_groups(scan.duplicates, scan.folder)
    assert isinstance(fig, Figure)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 4 and fig.axes[0].get_subplotspec().get_geometry()[:2] == (2, 2)
    conflict_titles = [ax.get_title() for ax in shown if ax.title.get_color() == "red"]
    assert conflict_titles == ["cat\n0.png", "dog\ncopy_of_cat.jpg"]
    plt.close("all")


def test_no_duplicates_is_a_figure_that_says_so(class_folder):
    scan = scan_image_folder(class_folder)
    fig = plots.plot_duplicate_groups(scan.duplicates, scan.folder)
    assert fig.axes[0].texts[0].get_text() == "no duplicates found"
    plt.close("all")
