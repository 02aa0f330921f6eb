// LFM2 configuration: the normalized form every part of webgrpo uses (and the JSON the native engine takes),
// parsed from a Hugging Face config.json with all of LFM2's quirks.
// CONTRACT (filled in by the model-io work): keep these field names; the native engine reads them.

export type LayerType = 'conv' | 'attention';

export interface Lfm2Config {
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Effective MLP width after block_auto_adjust_ff_dim / multiplier / multiple_of (4608 for 350M). */
  intermediateSize: number;
  layerTypes: LayerType[];
  /** Short-conv kernel width (L_cache), 3 for every released LFM2. */
  convKernel: number;
  normEps: number;
  ropeTheta: number;
  tieEmbeddings: boolean;
  bosTokenId: number;
  eosTokenId: number;
  padTokenId: number;
  maxPositionEmbeddings: number;
  initializerRange: number;
}
