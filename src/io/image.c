#include "io/image.h"

#include <stdio.h> /* before jpeglib.h, which needs FILE and size_t */
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>

#include "core/tensor.h"

mp_error *mp_image_alloc(mp_image *img, int width, int height, int channels) {
  memset(img, 0, sizeof *img);
  if (width <= 0 || height <= 0 || width > MP_IMAGE_MAX_SIDE || height > MP_IMAGE_MAX_SIDE || (channels != 1 && channels != 3))
    return mp_errorf("invalid image size %dx%d with %d channels (sides 1..%d, 1 or 3 channels)", width, height, channels,
                     MP_IMAGE_MAX_SIDE);
  img->pixels = mp_calloc((size_t)width * (size_t)height, (size_t)channels);
  if (!img->pixels) return mp_errorf("out of memory for a %dx%d image", width, height);
  img->width = width, img->height = height, img->channels = channels;
  return NULL;
}

void mp_image_free(mp_image *img) {
  if (!img) return;
  mp_free(img->pixels);
  memset(img, 0, sizeof *img);
}

static mp_error *read_png(const char *path, int channels, mp_image *img) {
  png_image pi;
  memset(&pi, 0, sizeof pi);
  pi.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&pi, path)) return mp_errorf("%s: not a readable PNG (%s)", path, pi.message);
  if (pi.width > MP_IMAGE_MAX_SIDE || pi.height > MP_IMAGE_MAX_SIDE) {
    png_image_free(&pi);
    return mp_errorf("%s: %ux%u is larger than the %d px limit", path, pi.width, pi.height, MP_IMAGE_MAX_SIDE);
  }
  pi.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  MP_TRY(mp_image_alloc(img, (int)pi.width, (int)pi.height, channels));
  if (!png_image_finish_read(&pi, NULL, img->pixels, 0, NULL)) {
    mp_error *e = mp_errorf("%s: PNG decoding failed (%s)", path, pi.message);
    png_image_free(&pi);
    mp_image_free(img);
    return e;
  }
  return NULL;
}

typedef struct {
  struct jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
} jpeg_error;

static void jpeg_error_exit(j_common_ptr cinfo) {
  jpeg_error *err = (jpeg_error *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

static mp_error *read_jpeg(const char *path, FILE *f, int channels, mp_image *img) {
  struct jpeg_decompress_struct cinfo;
  jpeg_error jerr;
  memset(img, 0, sizeof *img);
  cinfo.err = jpeg_std_error(&jerr.mgr);
  jerr.mgr.error_exit = jpeg_error_exit;
  if (setjmp(jerr.jump)) {
    jpeg_destroy_decompress(&cinfo);
    mp_image_free(img);
    return mp_errorf("%s: JPEG decoding failed (%s)", path, jerr.message);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_stdio_src(&cinfo, f);
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.image_width > MP_IMAGE_MAX_SIDE || cinfo.image_height > MP_IMAGE_MAX_SIDE) {
    mp_error *e = mp_errorf("%s: %ux%u is larger than the %d px limit", path, cinfo.image_width, cinfo.image_height,
                            MP_IMAGE_MAX_SIDE);
    jpeg_destroy_decompress(&cinfo);
    return e;
  }
  cinfo.out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  mp_error *e = mp_image_alloc(img, (int)cinfo.output_width, (int)cinfo.output_height, channels);
  if (e) {
    jpeg_destroy_decompress(&cinfo);
    return e;
  }
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = img->pixels + (size_t)cinfo.output_scanline * (size_t)img->width * (size_t)channels;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return NULL;
}

mp_error *mp_image_read(const char *path, int channels, mp_image *img) {
  memset(img, 0, sizeof *img);
  if (channels != 1 && channels != 3) return mp_errorf("mp_image_read: channels must be 1 or 3");
  FILE *f = fopen(path, "rb");
  if (!f) return mp_errorf("cannot open image %s", path);
  unsigned char magic[8] = {0};
  size_t n = fread(magic, 1, sizeof magic, f);
  mp_error *e;
  if (n == 8 && png_sig_cmp(magic, 0, 8) == 0) {
    fclose(f);
    return read_png(path, channels, img);
  } else if (n >= 3 && magic[0] == 0xff && magic[1] == 0xd8 && magic[2] == 0xff) {
    rewind(f);
    e = read_jpeg(path, f, channels, img);
  } else {
    e = mp_errorf("%s: not a PNG or JPEG file", path);
  }
  fclose(f);
  return e;
}

mp_error *mp_image_read_png_text(const char *path, const char *key, char **value) {
  *value = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) return mp_errorf("cannot open image %s", path);
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  if (!png || !info) {
    png_destroy_read_struct(&png, &info, NULL);
    fclose(f);
    return mp_errorf("out of memory");
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, NULL);
    fclose(f);
    free(*value);
    *value = NULL;
    return mp_errorf("%s: not a readable PNG", path);
  }
  png_init_io(png, f);
  png_read_info(png, info);
  png_textp text;
  int n = 0;
  png_get_text(png, info, &text, &n);
  for (int i = 0; i < n; i++)
    if (strcmp(text[i].key, key) == 0) {
      *value = strdup(text[i].text ? text[i].text : "");
      break;
    }
  png_destroy_read_struct(&png, &info, NULL);
  fclose(f);
  return NULL;
}

mp_error *mp_image_write_png(const char *path, const mp_image *img, const char *text_key, const char *text_value) {
  FILE *f = fopen(path, "wb");
  if (!f) return mp_errorf("cannot create %s", path);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  png_bytep *rows = calloc((size_t)img->height, sizeof *rows);
  if (!png || !info || !rows) {
    png_destroy_write_struct(&png, &info);
    free(rows);
    fclose(f);
    return mp_errorf("out of memory writing %s", path);
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    free(rows);
    fclose(f);
    return mp_errorf("writing %s failed", path);
  }
  png_init_io(png, f);
  png_set_IHDR(png, info, (png_uint_32)img->width, (png_uint_32)img->height, 8,
               img->channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (text_key && text_value) {
    png_text t;
    memset(&t, 0, sizeof t);
    /* iTXt keeps UTF-8 prompts intact; AUTOMATIC1111 and ComfyUI read both tEXt and iTXt. */
    t.compression = PNG_ITXT_COMPRESSION_NONE;
    t.key = (png_charp)text_key;
    t.text = (png_charp)text_value;
    t.text_length = 0;
    t.itxt_length = strlen(text_value);
    png_set_text(png, info, &t, 1);
  }
  png_write_info(png, info);
  for (int y = 0; y < img->height; y++) rows[y] = img->pixels + (size_t)y * (size_t)img->width * (size_t)img->channels;
  png_write_image(png, rows);
  png_write_end(png, NULL);
  png_destroy_write_struct(&png, &info);
  free(rows);
  if (fclose(f) != 0) return mp_errorf("writing %s failed (disk full?)", path);
  return NULL;
}

mp_error *mp_image_write_jpeg(const char *path, const mp_image *img, int quality) {
  FILE *f = fopen(path, "wb");
  if (!f) return mp_errorf("cannot create %s", path);
  struct jpeg_compress_struct cinfo;
  jpeg_error jerr;
  cinfo.err = jpeg_std_error(&jerr.mgr);
  jerr.mgr.error_exit = jpeg_error_exit;
  if (setjmp(jerr.jump)) {
    jpeg_destroy_compress(&cinfo);
    fclose(f);
    return mp_errorf("writing %s failed (%s)", path, jerr.message);
  }
  jpeg_create_compress(&cinfo);
  jpeg_stdio_dest(&cinfo, f);
  cinfo.image_width = (JDIMENSION)img->width;
  cinfo.image_height = (JDIMENSION)img->height;
  cinfo.input_components = img->channels;
  cinfo.in_color_space = img->channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = img->pixels + (size_t)cinfo.next_scanline * (size_t)img->width * (size_t)img->channels;
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  if (fclose(f) != 0) return mp_errorf("writing %s failed (disk full?)", path);
  return NULL;
}

void mp_image_to_planar(const mp_image *img, float *chw, float lo, float hi) {
  size_t plane = (size_t)img->width * (size_t)img->height;
  for (int c = 0; c < img->channels; c++)
    for (size_t i = 0; i < plane; i++)
      chw[c * plane + i] = lo + (hi - lo) * (float)img->pixels[i * (size_t)img->channels + (size_t)c] / 255.0f;
}

void mp_image_from_planar(mp_image *img, const float *chw, float lo, float hi) {
  size_t plane = (size_t)img->width * (size_t)img->height;
  for (int c = 0; c < img->channels; c++)
    for (size_t i = 0; i < plane; i++) {
      float v = (chw[c * plane + i] - lo) / (hi - lo);
      v = v < 0 ? 0 : v > 1 ? 1 : v;
      /* round half to even, like numpy's round() in the reference pipelines */
      img->pixels[i * (size_t)img->channels + (size_t)c] = (uint8_t)nearbyintf(v * 255.0f);
    }
}
