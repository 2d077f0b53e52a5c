"""The notes' output-size formula and its errors."""
import pytest

from gpuconv.geometry import GeometryError, effective_filter, window_output_size, window_pad_after


@pytest.mark.parametrize("w,f,s,p,d,expected", [
    (7, 3, 1, 0, 1, 5), (7, 3, 2, 0, 1, 3),           # the notes' 1-D example
    (227, 11, 4, 0, 1, 55),                            # AlexNet's first layer
    (224, 3, 1, 1, 1, 224), (32, 5, 1, 2, 1, 32),      # 'same' padding P=(F-1)/2
    (32, 3, 1, 0, 2, 28), (32, 3, 1, 2, 2, 32),        # dilation: effective F = D*(F-1)+1
    (1, 1, 1, 0, 1, 1),
])
def test_output_size(w, f, s, p, d, expected):
    assert window_output_size(w, f, s, p, d) == expected


def test_notes_invalid_example_names_layer_formula_and_numbers():
    with pytest.raises(GeometryError) as e:
        window_output_size(10, 3, 2, 0, layer="conv1")
    msg = str(e.value)
    assert "conv1" in msg and "(W - F + 2P)/S + 1" in msg
    assert "W=10" in msg and "F=3" in msg and "P=0" in msg and "S=2" in msg and "4.5" in msg


def test_filter_larger_than_input():
    with pytest.raises(GeometryError, match="does not fit"):
        window_output_size(4, 7, 1, 0, layer="c")


def test_dilation_named_in_error():
    with pytest.raises(GeometryError, match="effective F"):
        window_output_size(10, 3, 2, 0, 2)


@pytest.mark.parametrize("kw", [dict(f=0), dict(s=0), dict(p=-1), dict(dilation=0)])
def test_bad_hyperparameters(kw):
    args = dict(w=8, f=3, s=1, p=0, dilation=1)
    args.update(kw)
    with pytest.raises(GeometryError):
        window_output_size(**args)


def test_effective_filter():
    assert effective_filter(3, 1) == 3 and effective_filter(3, 2) == 5 and effective_filter(5, 4) == 17


@pytest.mark.parametrize("w,f,s,p,d,floor,ceil", [
    (8, 3, 2, 1, 1, 4, 5),        # ResNet's strided 3x3: the ceil window starts at 7, inside
    (8, 1, 2, 0, 1, 4, 4),        # 1x1/2: a ceil window at 8 would hold padding only
    (224, 7, 2, 3, 1, 112, 113),  # the 7x7/2 stem
    (112, 3, 2, 0, 1, 55, 56),    # GoogLeNet's ceil max pool
    (9, 3, 3, 0, 2, 2, 3),        # dilation: effective F = 5
    (7, 3, 2, 0, 1, 3, 3),        # exact: every rounding agrees
])
def test_rounded_output_size(w, f, s, p, d, floor, ceil):
    assert window_output_size(w, f, s, p, d, rounding="floor") == floor
    assert window_output_size(w, f, s, p, d, rounding="ceil") == ceil
    if floor == ceil and (w - effective_filter(f, d) + 2 * p) % s == 0:
        assert window_output_size(w, f, s, p, d) == floor
    else:
        with pytest.raises(GeometryError, match="not an integer"):
            window_output_size(w, f, s, p, d, rounding="exact")


def test_rounding_errors():
    with pytest.raises(ValueError, match="rounding must be one of"):
        window_output_size(8, 3, 2, 1, rounding="round", layer="c")
    with pytest.raises(GeometryError, match="does not fit"):
        window_output_size(2, 5, 2, 0, rounding="floor")
    assert window_pad_after(224, 7, 2, 3, 112) == 2 and window_pad_after(8, 3, 2, 1, 5) == 2


def test_stride_one_is_always_exact():
    """Winograd F(2x2,3x3) runs only at stride 1, where no rounding changes the output size."""
    for w in range(3, 20):
        for p in range(3):
            sizes = {window_output_size(w, 3, 1, p, rounding=r) for r in ("exact", "floor", "ceil")}
            assert sizes == {w + 2 * p - 2}
