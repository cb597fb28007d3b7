"""Response shapes, published in the OpenAPI schema (and checked against it by the fuzz test)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    error: str = Field(description="What was wrong with the request, in one line.")


class Status(BaseModel):
    status: str


class ImageTiming(BaseModel):
    batch_size: int = Field(description="Images scored together with this one.")
    queue_ms: float = Field(description="Wait before its batch started.")
    score_ms: float = Field(description="Scoring time of its whole batch.")


class Outputs(BaseModel):
    heatmap: str | None = Field(None, description="Colour heatmap, base64 PNG.")
    overlay: str | None = Field(None, description="Heatmap over the image, base64 PNG.")
    mask: str | None = Field(None, description=(
        "Defect mask (0/255 grey), base64 PNG; null when the model has no calibrated pixel "
        "threshold (an uncalibrated run) or the anomaly map is not finite."))


class ImagePrediction(BaseModel):
    index: int
    filename: str
    width: int
    height: int
    category: str | None
    score: float | None = Field(description="Raw image score; null when not finite.")
    threshold: float | None
    threshold_source: str | None = Field(
        description="'category:<c>', 'global', 'request' or null (no threshold)."
    )
    anomalous: bool | None = Field(description="score > threshold; null without a threshold.")
    normalised_score: float | None = Field(description="score / threshold.")
    outputs: Outputs
    timing: ImageTiming


class RequestTiming(BaseModel):
    decode_ms: float
    queue_ms: float
    score_ms: float
    render_ms: float
    total_ms: float


class PredictResponse(BaseModel):
    results: list[ImagePrediction]
    timing: RequestTiming


class Thresholds(BaseModel):
    global_: float | None = Field(alias="global")
    categories: dict[str, float]


class Limits(BaseModel):
    max_batch: int
    max_wait_ms: float
    max_images: int
    max_body_bytes: int
    max_image_pixels: int
    max_pixels_in_flight: int


class ModelCard(BaseModel):
    backend: str
    run: str | None = None
    method: str
    backbone: str
    input_size: int | list[int] = Field(description=(
        "The model's input size in pixels: an integer for a square, else [height, width]."))
    tiling: dict[str, float] | None = Field(None, description=(
        "Where the model scores overlapping tiles of input_size cut from the image scaled by "
        "`scale` (refad.pipeline.tiled): {overlap, scale}; absent: the image is resized."))
    mode: str
    categories: list[str]
    category_required: bool
    thresholds: Thresholds
    refad_version: str
    device: str
    scored_with: str = Field("", description=(
        "What computes the scores: 'pytorch on cpu', or an export's runtime, precision and "
        "the arithmetic this machine gives it ('openvino, bf16 export, f32 arithmetic on cpu')."))
    limits: Limits
    api_key_required: bool


PREDICT_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "One or several images (PNG, JPEG, BMP, TIFF...).",
                        },
                        "category": {"type": "string", "description": "Which category."},
                        "threshold": {
                            "type": "number", "exclusiveMinimum": 0,
                            "description": "Decide with this threshold instead of the run's.",
                        },
                        "outputs": {
                            "type": "string",
                            "description": "Comma-separated: heatmap, overlay, mask; or none.",
                        },
                    },
                },
                "encoding": {"image": {"contentType": "application/octet-stream"}},
            }
        },
    }
}
