// Draws examples/demo.jpg (a house under a sunny sky), the image the README's
// demo (scripts/demo.sh) chats about. Not part of the build; regenerate with
//   g++ -std=c++20 -I/usr/include/opencv4 examples/make_demo_image.cc
//       -lopencv_core -lopencv_imgproc -lopencv_imgcodecs -o /tmp/mkdemo && /tmp/mkdemo examples/demo.jpg
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <vector>

int main(int argc, char** argv) {
  constexpr int kWidth = 800, kHeight = 600, kHorizon = 380, kJpegQuality = 85;
  cv::Mat img(kHeight, kWidth, CV_8UC3);
  for (int y = 0; y < kHeight; ++y) {  // sky and grass gradients (BGR)
    const double t = y < kHorizon ? double(y) / kHorizon : double(y - kHorizon) / (kHeight - kHorizon);
    const cv::Vec3b c = y < kHorizon ? cv::Vec3b(240 - 20 * t, 184 + 50 * t, 122 + 100 * t)
                                     : cv::Vec3b(74 - 30 * t, 174 - 50 * t, 95 - 40 * t);
    img.row(y).setTo(c);
  }
  cv::circle(img, {670, 110}, 55, {74, 216, 255}, cv::FILLED, cv::LINE_AA);                 // sun
  cv::rectangle(img, {260, 280}, {520, 460}, {122, 162, 201}, cv::FILLED);                 // walls
  const std::vector<cv::Point> roof = {{235, 282}, {390, 170}, {545, 282}};
  cv::fillConvexPoly(img, roof, {42, 50, 184}, cv::LINE_AA);                               // roof
  cv::rectangle(img, {365, 370}, {415, 460}, {38, 66, 107}, cv::FILLED);                   // door
  cv::rectangle(img, {290, 320}, {340, 360}, {255, 211, 159}, cv::FILLED);                 // windows
  cv::rectangle(img, {440, 320}, {490, 360}, {255, 211, 159}, cv::FILLED);
  cv::rectangle(img, {110, 320}, {130, 440}, {26, 42, 59}, cv::FILLED);                    // tree trunk
  cv::circle(img, {120, 290}, 60, {58, 139, 46}, cv::FILLED, cv::LINE_AA);                 // tree crown
  cv::putText(img, "InternVL demo", {20, 580}, cv::FONT_HERSHEY_SIMPLEX, 1.0, {255, 255, 255}, 2, cv::LINE_AA);
  return cv::imwrite(argc > 1 ? argv[1] : "demo.jpg", img, {cv::IMWRITE_JPEG_QUALITY, kJpegQuality}) ? 0 : 1;
}
