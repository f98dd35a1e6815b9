//! The messages of TensorFlow's `event.proto`, `summary.proto`, `tensor.proto` and
//! `tensor_shape.proto` that event files use, derived by hand with prost (field numbers as in
//! those files) so that no `protoc` is needed at build time. Unknown fields are skipped when
//! reading, as protobuf does.

/// `tensorflow.Event`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    pub what: Option<What>,
}

/// `Event.what`, the two kinds written here.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// `brain.Event:2`, the first event of every file.
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`: a tag, what it is (metadata) and its value. Only the tensor
/// form is written (TensorFlow 2's, Keras 3's); `simple_value` is read, for files others wrote.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    #[prost(message, optional, tag = "8")]
    pub tensor: Option<TensorProto>,
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
}

/// `tensorflow.SummaryMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
    #[prost(string, tag = "2")]
    pub display_name: String,
    #[prost(string, tag = "3")]
    pub summary_description: String,
    /// `DataClass`: 1 scalar, 2 tensor, 3 blob sequence.
    #[prost(int32, tag = "4")]
    pub data_class: i32,
}

/// `tensorflow.SummaryMetadata.PluginData`: which TensorBoard plugin shows the value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `tensorflow.TensorProto`, the fields used here.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// `DataType`: 1 float, 2 double, 7 string.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    /// Little-endian values, row-major.
    #[prost(bytes = "vec", tag = "4")]
    pub tensor_content: Vec<u8>,
    #[prost(float, repeated, tag = "5")]
    pub float_val: Vec<f32>,
    #[prost(double, repeated, tag = "6")]
    pub double_val: Vec<f64>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

/// `tensorflow.TensorShapeProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<Dim>,
}

/// `tensorflow.TensorShapeProto.Dim`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dim {
    #[prost(int64, tag = "1")]
    pub size: i64,
}

pub const DT_FLOAT: i32 = 1;
pub const DT_DOUBLE: i32 = 2;
pub const DT_STRING: i32 = 7;
pub const DATA_CLASS_SCALAR: i32 = 1;
pub const DATA_CLASS_TENSOR: i32 = 2;
pub const DATA_CLASS_BLOB_SEQUENCE: i32 = 3;

impl SummaryValue {
    /// The value as one number: a scalar tensor's, or `simple_value`.
    pub fn scalar(&self) -> Option<f64> {
        if let Some(v) = self.simple_value {
            return Some(v as f64);
        }
        let t = self.tensor.as_ref()?;
        match t.dtype {
            DT_FLOAT => t.float_val.first().map(|&v| v as f64).or_else(|| {
                let b: [u8; 4] = t.tensor_content.get(..4)?.try_into().ok()?;
                Some(f32::from_le_bytes(b) as f64)
            }),
            DT_DOUBLE => t.double_val.first().copied().or_else(|| {
                let b: [u8; 8] = t.tensor_content.get(..8)?.try_into().ok()?;
                Some(f64::from_le_bytes(b))
            }),
            _ => None,
        }
    }

    /// The TensorBoard plugin that shows this value.
    pub fn plugin(&self) -> Option<&str> {
        Some(&self.metadata.as_ref()?.plugin_data.as_ref()?.plugin_name)
    }
}
